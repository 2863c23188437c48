"""The vLLM engine: the shared tick step (model/engines/stepper.py) on vLLM's engine."""
