"""The router stage (``rules/router.smk``): the light router that sends each prompt to one expert.

``train`` (the router), ``table`` (its held-out accuracy over seeds).
"""
