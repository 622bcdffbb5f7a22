"""The hybrid pipeline: the LLM plans (planner.py), diffusion renders, the describer reads the picture
back (describe.py), the checker scores, and the loop refines (loop.py); evaluate.py measures it."""
