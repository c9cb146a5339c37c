"""A software prefetch of one cache line, for kernels that stream constant tables a whole model does not keep in
cache (`llvm.prefetch`: `prefetcht1` on x86, `prfm` on ARM).

At one sentence MiniLM reads each PQ table once per inference (about 10 MB at K=16 V=16), in order; with the
tables evicted from the shared L3 the lookups waited on DRAM at 1.6-4 GB/s (the hardware prefetcher does not run
ahead of 1 KB slabs read by short loops), 6-8x their warm time.
"""

from tvm.script import tirx as T

L2 = 2  # llvm.prefetch locality: 3 = L1 (prefetcht0), 2 = L2 (prefetcht1)


def prefetch(address, locality: int = L2):
    """The statement prefetching the line at `address` (`T.address_of(buffer[...])`) for reading."""
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", address, T.int32(0), T.int32(locality),
                                         T.int32(1)))
