"""From Words to Worlds: how a language model and a diffusion model differ, and how they work together.

The package, from the bottom up (each layer imports only the layers below it):

- errors.py, gpu.py: errors, input checks, the ZeroGPU decorator; import nothing of the package.
- accel.py, presets.py, models.py: the speed-up options, which model plays which role, and the
  one place models are loaded (once per process, on the preset's device, with a report).
- world/: the storybook world, drawn by code: scenes, captions, the recognizer, training, evaluation.
- words/, worlds/: the engines: text token by token; images step by step from noise.
- compare.py, explore/, hybrid/: the tabs' functions: both at once, the embedding explorer,
  the plan-render-check-refine loop.
- ui/ (Gradio) and __main__.py (the command line): the entry points, which read the preset once
  and pass it down.
"""
