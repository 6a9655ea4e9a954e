"""The meaning of a program: the rules registry (one file per op), the passes that
check a built program against it (shapes, Gaussian inputs), the derivation of the K/Θ
recursion, the dual activations and their quadrature, window geometry and the
covariance-structure pass."""
