"""Reporting on runs: the results tables and TensorBoard scalars a run writes (`tables`, `tensorboard`), the HTML
page of a sweep run (`html`, read by `load`, drawn by `figures` and `page`) and several runs side by side
(`compare`). This package module imports nothing, so the protocol can write tables without loading the rest.
"""
