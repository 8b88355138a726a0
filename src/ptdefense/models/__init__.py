"""Models whose forward pass is an ordered list of named blocks, so that PT can freeze a prefix:
catalogue.py (names and block counts, torch-free), blocknet.py, registry.py (builders), io.py."""
