"""The embedding explorer: words in meaning space and appearance space (spaces.py), projected and
compared (projection.py, explorer.py), drawn with plotly (figures.py)."""
