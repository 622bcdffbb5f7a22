"""The storybook world, drawn by code: scenes and their captions (scene.py), drawing (draw.py), the
recognizer that reads pictures back (recognizer.py), the GenEval-style checker (checker.py), and the
miniature Stable Diffusion's parts, training and evaluation (components.py, train.py, evaluate.py).
It imports nothing of the package but errors.py."""
