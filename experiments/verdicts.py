"""The verdicts of claims 2, 2b and 4, computed from results.json by fixed
rules written before the runs of issue 44 were read, so that a verdict
cell in the docs is this module's output and a test can regenerate it:

    python -m experiments.verdicts [--out docs/results]

Rules (B >= `LARGE` is a large batch; a difference "ahead" / "behind" /
"level" is `experiments.paired.reading` of its 95% interval):

- Claim 2 (LARS holds accuracy longer than SGD as the batch grows): holds
  where LARS - SGD is ahead at every large batch, partly where at some,
  does not hold where at none.
- Claim 2b (a wider interval of good LRs for LARS): compared per large
  batch where both intervals are closed (neither reaches an end of its
  grid); holds where LARS's ratio exceeds SGD's at every such batch,
  partly at some, does not hold at none; no verdict without such a batch.
- Claim 4 (CLARS without warmup against LARS with warmup): holds where
  CLARS - LARS with warmup is ahead after epoch 1 and not behind at the end
  at every batch of the claim, partly where ahead after epoch 1 at some
  batch, does not hold otherwise.
"""

import argparse
import os

from experiments import paired
from keras_lars.train import records

LARGE = 4096


def _k(batch):
    batch = int(batch)
    return f"{batch // 1024}K" if batch >= 1024 else str(batch)


def _grade(hits, total):
    if total == 0:
        return "no verdict"
    return "holds" if hits == total else "partly" if hits else "does not hold"


def claim2(result):
    """(verdict, text) of claim 2 for one model's batch-scaling results."""
    differences = result["paired"]["lars-sgd"]
    batches = sorted(differences, key=int)
    large = [b for b in batches if int(b) >= LARGE]
    ahead = [b for b in large if paired.reading(differences[b]) == "ahead"]
    verdict = _grade(len(ahead), len(large))
    text = "; ".join(f"{_k(b)} {paired.reading(differences[b])} ({paired.text(differences[b])})" for b in batches)
    return verdict, f"**{verdict}**: LARS - SGD, seed-paired test top-1: {text}"


def claim2b(result):
    """(verdict, text) of claim 2b for one model's batch-scaling results."""
    cells, compared, wider = [], 0, 0
    sgd, lars = result["methods"]["sgd"], result["methods"]["lars"]
    for b in sorted(set(sgd) & set(lars), key=int):
        ranges = [m[b]["good_lr_range"] for m in (lars, sgd)]
        is_open = [r["low_open"] or r["high_open"] for r in ranges]
        shown = [(">=" if o else "") + f"{r['ratio']:g}x" for r, o in zip(ranges, is_open)]
        cells.append(f"{_k(b)} {shown[0]} vs {shown[1]}")
        if int(b) >= LARGE and not any(is_open):
            compared += 1
            wider += ranges[0]["ratio"] > ranges[1]["ratio"]
    verdict = _grade(wider, compared)
    return verdict, (f"**{verdict}**: interval of good LRs, LARS vs SGD (>=: reaches the grid's end, left out): "
                     + "; ".join(cells) + f"; LARS wider at {wider} of {compared} large batches compared")


def claim4(result):
    """(verdict, text) of claim 4 for one model's warmup results."""
    batches = sorted(result["batches"], key=int)
    early = ends = 0
    parts = []
    for b in batches:
        d = result["batches"][b]["paired"]["clars-lars_warmup"]
        first, last = d["1"], d[str(result["epochs"])]
        early += paired.reading(first) == "ahead"
        ends += paired.reading(first) == "ahead" and paired.reading(last) != "behind"
        parts.append(f"{_k(b)} epoch 1 {paired.reading(first)} ({paired.text(first)}), end "
                     f"{paired.reading(last)} ({paired.text(last)})")
    verdict = "holds" if ends == len(batches) else "partly" if early else "does not hold"
    return verdict, f"**{verdict}**: CLARS - LARS with warmup, seed-paired test top-1: " + "; ".join(parts)


def cells(out):
    """{(claim, model): text} for every model in the results files of `out`
    that carries paired differences (the protocol of issue 44)."""
    found = {}
    for name, rules in (("batch_scaling", (("2", claim2), ("2b", claim2b))), ("warmup", (("4", claim4),))):
        path = os.path.join(out, name, "results.json")
        if not os.path.exists(path):
            continue
        for model, result in records.read_json(path)["models"].items():
            if name == "batch_scaling" and "paired" not in result:
                continue
            if name == "warmup" and not all("paired" in e for e in result["batches"].values()):
                continue
            for claim, rule in rules:
                found[claim, model] = rule(result)[1]
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args(argv)
    for (claim, model), text in cells(args.out).items():
        print(f"claim {claim}, {model}: {text}")


if __name__ == "__main__":
    main()
