"""A multi-process test harness: real nodes on 127.0.0.1, driven from tests.

`cluster.Cluster` builds a devnet in a temp folder and controls each node's
process, its clock and its test switches; `links` puts a proxy on every link
between nodes so a test can split, slow or cut the network; `chain` fetches
every block from every node and checks that they agree; `safety` checks a
whole run (blocks, every recorded signed consensus message, final
transactions) for forks and double signs; `load.SteadyLoad` keeps submitting
transactions from a thread while a test breaks things.
"""
