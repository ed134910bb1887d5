"""Federated LoRA fine-tuning on Flower: clients train LoRA on their own rows, the server aggregates.

`config` (the recipe's `federated:` section) imports nothing heavy; the math is pure functions on LoRA
state dicts (`dict[str, Tensor]`, PEFT key names): `updates` (deltas, norms, checks, weighted FedAvg),
`proximal` (FedProx's term), `privacy` (clipping, Gaussian noise, Opacus' RDP accountant) and `rounds`
(one round's aggregation). `client` trains with lorafleet's own optimizer step, `server` runs the rounds
and writes the `ledger`; `apps` wraps both as Flower apps, run by `simulation` (one machine) or
`deployment` (SuperLink and SuperNodes over gRPC). flwr and opacus (extra `federated`) are imported
inside the functions that use them.
"""
