"""ResNet trainer for large-batch LARS: `python -m train --help`."""
