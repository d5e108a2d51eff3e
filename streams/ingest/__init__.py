"""Getting findings in: the Security Hub poller, the EventBridge -> SQS/Lambda path, and
what they share (findings -> keyed Kafka records).
"""
