"""The peft method: config, layers, model, adapter files. The only code that knows peft's tuner internals."""
