"""A multi-process test harness: real nodes on 127.0.0.1, driven from tests.

`cluster.Cluster` builds a devnet in a temp folder and controls each node's
process; `chain` fetches every block from every node and checks that they
agree; `load.SteadyLoad` keeps submitting transactions from a thread while a
test breaks things.
"""
