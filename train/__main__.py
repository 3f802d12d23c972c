import sys

from train.config import parse_args
from train.distribution import DistributionError
from train.runner import run

if __name__ == "__main__":
    config = parse_args()
    try:
        run(config)
    except (DistributionError, FileNotFoundError) as e:
        sys.exit(f"python -m train: error: {e}")
