"""The decision core: parsing, keys, policy, the decision table, event time, state and
output records. Pure: no I/O, no Faust, aiokafka, boto3 or HTTP (docs/design.md §8).
"""
