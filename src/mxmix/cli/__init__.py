"""The thin command-line layer: argument parsing and printing; all work lives in the library."""
