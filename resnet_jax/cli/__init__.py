"""The command line's other parts: the console (console.py), --list_presets (presets.py),
--mode=predict (predict.py) and weights in and out (convert.py). main.py is the entry point."""
