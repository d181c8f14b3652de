"""Ocean Protocol publishing of crypto-doctor's anonymized research rows.

Chain node (ganache) management, Ocean V4 contract deployment, the publisher that turns settled
cases into a k-anonymous CSV whose digest lives on a data NFT, and the download endpoint that
replaces Ocean's Provider offline by verifying orders on chain.
"""
