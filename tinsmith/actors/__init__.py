"""Ray actors (coordinator, trainer worker, sampler worker) and the loss functions.

Heavy libraries (torch, deepspeed, peft, vllm) are imported inside the actors, never here.
"""
