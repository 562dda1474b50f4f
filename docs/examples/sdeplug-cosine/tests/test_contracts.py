import sdeplug.testing

test_contracts = sdeplug.testing.contract_tests("cosine")
