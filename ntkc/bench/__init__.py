"""`ntkc bench`: the benchmarks behind the README's figures (dense, conv, CIFAR-size)."""
