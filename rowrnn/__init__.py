"""The `rowrnn` command line: a thin layer over rowrnn_keras, export and runtime."""
