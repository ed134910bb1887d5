"""Fine-tuning jobs: a queue in the registry, workers that claim jobs, and the processes that run them.

`runner` is the job process (`python -m lorafleet.jobs.runner SPEC.json`) and its events-file
contract; `executors` start, watch, cancel and kill it, locally or on Ray.
"""
