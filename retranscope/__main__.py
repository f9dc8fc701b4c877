from retranscope.cli import main

main()
