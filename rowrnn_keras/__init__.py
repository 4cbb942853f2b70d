"""rowrnn Keras side: MNIST data, the row-LSTM model, training and evaluation."""
