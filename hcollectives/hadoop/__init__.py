"""Hadoop integration: mrjob's HDFS calls through hdfs-native, the cluster's
configuration files, and the YARN watch behind speculative scheduling."""
