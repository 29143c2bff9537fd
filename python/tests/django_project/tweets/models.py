from django.db import models
from django.utils import timezone


class Tweet(models.Model):
    author = models.CharField(max_length=64)
    text = models.CharField(max_length=280)
    posted = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"@{self.author}: {self.text}"
