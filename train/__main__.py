from keras_lars_train import main

if __name__ == "__main__":
    main(prog="python -m train")
