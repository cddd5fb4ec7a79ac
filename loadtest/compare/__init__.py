"""`make compare`: worker classes and frameworks side by side on identical work, with numbers and charts."""
