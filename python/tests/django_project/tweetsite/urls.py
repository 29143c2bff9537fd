from django.urls import path

from tweets import views

urlpatterns = [
    path("tweets/<str:username>/", views.tweets),
    path("tweet/<int:pk>/", views.tweet_detail),
]
