import os

# Before any experiment module imports TensorFlow: its C++ INFO lines off.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
