"""Kafka client edges shared by every command: broker security, MSK IAM, topic names
and creation, and living with an unavailable broker.
"""
