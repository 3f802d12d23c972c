"""Training processes: the suite's one process pool (`parallel`) and cached
runs trained in it (`run_many`)."""

from experiments.runs import configure_runtime, read_cached, run


def parallel(function, tasks, jobs):
    """Calls `function(task)` for every task, in order, in `jobs` spawned
    processes (each configures its own runtime), or in this process when
    jobs is 1 or there is one task and no processes yet. The processes are
    started once and serve every later call (every claim of a suite): each
    start imports TensorFlow. A task's exception is raised here."""
    if jobs == 1 or len(tasks) == 0 or (len(tasks) == 1 and not _POOL):
        return [function(task) for task in tasks]
    return list(_pool(jobs).imap(function, tasks, chunksize=1))


_POOL = []  # the suite's one process pool, started on first use


def _pool(jobs):
    if not _POOL:
        import atexit
        import multiprocessing

        _POOL.append(multiprocessing.get_context("spawn").Pool(jobs))
        atexit.register(_POOL[0].terminate)
    return _POOL[0]


def _run_task(task):
    configure_runtime()
    return run(*task)


def run_many(tasks, jobs=1):
    """`run(spec, cache_dir, jit_compile=jit)` for every (spec, cache_dir, jit)
    task, in `jobs` processes; the summaries, in order. Cached runs are read
    here: processes are started only for runs left to train."""
    summaries = [read_cached(spec, cache) for spec, cache, _ in tasks]
    todo = [i for i, summary in enumerate(summaries) if summary is None]
    trained = parallel(_run_task, [(*tasks[i][:2], (), print, tasks[i][2]) for i in todo], jobs)
    for i, summary in zip(todo, trained):
        summaries[i] = summary
    return summaries
