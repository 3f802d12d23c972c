from train.config import parse_args
from train.runner import run

if __name__ == "__main__":
    run(parse_args())
