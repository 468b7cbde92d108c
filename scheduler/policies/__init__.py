"""Built-in policies; importing this package registers them."""

from scheduler.policies import (mcsf, reserving, sarathi, sjf, vllm_v0, vllm_v1,  # noqa: F401
                                wait)
