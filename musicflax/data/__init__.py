"""MusicNet files -> notes/audio -> TFDS examples -> windows -> tf.data batches (numpy out)."""
