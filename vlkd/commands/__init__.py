"""Subcommands of ``vlkd`` beyond Lightning's fit/validate/test/predict, one module each."""
