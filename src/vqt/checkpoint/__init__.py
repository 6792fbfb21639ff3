"""What training leaves on disk: adapters and trained runs, written atomically and checked when read.

`files` (names, formats, the library version) is a leaf that feature stores may import; `config` is the one
checked reader of both formats' configs; `adapter` is the peft-shaped VQT adapter; `trained` is what the protocol
saves for any method. Nothing here reaches the network: `vqt.hub` is the layer above that fetches and pushes.
This package module imports nothing, so importing `vqt.checkpoint.files` stays a leaf import.
"""
