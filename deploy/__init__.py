"""How the stack runs: the one topology, config rendering for both modes, and the up/down/ps/logs driver."""
