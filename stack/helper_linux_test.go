package stack

func runHelper() bool { return false }
