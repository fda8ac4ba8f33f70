"""Theory oracles: toy MDPs (exact enumeration) and Gaussian flows, and the theory tables."""
