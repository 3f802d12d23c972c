from keras_lars_train import main
main(prog="python -m train")
