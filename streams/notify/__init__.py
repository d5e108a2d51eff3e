"""Getting alerts out: the alerts topic delivered to Slack, PagerDuty, SNS and stdout,
with routes, rate limits, dead letters and the optional write-back to Security Hub.
"""
