"""`featx demo`: a local web page (Gradio) where the people who must judge a model try it on their images."""
