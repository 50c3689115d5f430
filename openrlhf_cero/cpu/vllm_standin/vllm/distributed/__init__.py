"""Weight-sync plumbing: a store-based process group and a gloo "NCCL" communicator."""
