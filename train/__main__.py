from keras_lars.train.__main__ import main

if __name__ == "__main__":
    main(prog="python -m train")
