"""The DICOM node (tools/serve.py): a storage SCP that receives mammograms, predicts a study once it is complete and
sends the results on. :mod:`.node` handles associations and the study pipeline, :mod:`.spool` keeps what was received
and made on disk across restarts, :mod:`.send` stores results to the destinations.

It sits on top: it may use inference and everything below it (tests/test_layers.py).
"""
