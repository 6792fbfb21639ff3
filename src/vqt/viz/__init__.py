"""Pictures of what a trained adapter does: `vqt.viz.attention` (maps from the queries' attention), `vqt.viz.figure`."""
