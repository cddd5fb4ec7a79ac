"""The IO-models lab: one small server per IO model, a load driver, and `make iolab` to measure them."""
