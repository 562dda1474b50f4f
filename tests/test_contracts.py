"""Every bundled part passes the testing kit: this is how the bundled plugins are tested."""

import sdeplug.testing

test_contracts = sdeplug.testing.contract_tests("reference", "torchdiffeq", "torchsde", "models", "fast", "features")
