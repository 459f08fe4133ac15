"""Training the codec: the loop, its state and resume, distributed training, recipes per rate, loss weighting strategies."""
